"""Sharded training of one model over the ranks of a torch.distributed process group (gloo on
the CPU, NCCL on CUDA): embeddings row-sharded by hash over ranks (`ShardedPolicy`), dense
parameters data-parallel (`DistributedLearner`, DistributedDataParallel), one global FIITED
budget (`GlobalBudget`). The math stays in models/policies and storage/vhpi; this package
only moves IDs, embeddings and gradients between ranks."""
