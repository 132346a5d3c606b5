"""corral: an LLM inference serving system."""

from corral.llm import LLM
from corral.outputs import CompletionOutput, Logprob, RequestOutput
from corral.sampling_params import SamplingParams

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput", "Logprob"]
