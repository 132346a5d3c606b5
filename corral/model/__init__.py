"""The data plane: model loading, layers, executor and sampler (torch), and the torch-free
architecture description in arch.py that the simulator shares."""
