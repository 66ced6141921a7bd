"""Stand-in for PyTensor's ``tests`` package (see ../README.md)."""
