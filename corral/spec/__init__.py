"""Speculative decoding: proposers (registered plug-ins), the adaptive choice of how many tokens
to propose, and verification. Everything here but the draft-model proposer and the verifier is
torch-free, so the scheduler and the simulator run the same code."""
