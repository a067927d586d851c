"""The VHPI (virtually-hashed, physically-indexed) chunk store.

`HashIndex` maps (field, raw ID) to an entry slot; `ChunkPool` holds fixed-size chunks of
`chunk_dim` floats and their optimizer state with a free-address stack; `ChunkStore` ties them
together with the FIITED utilities, pruning and regrowth.
"""

from storage.vhpi.chunk_pool import ChunkPool
from storage.vhpi.hash_index import HashIndex
from storage.vhpi.store import ChunkStore, StoreConfig

__all__ = ["ChunkPool", "ChunkStore", "HashIndex", "StoreConfig"]
