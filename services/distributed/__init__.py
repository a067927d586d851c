"""Starting the ranks of a sharded job: local processes, or torchrun's environment."""
