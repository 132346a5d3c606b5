"""The engine around one instance's control plane: LLMEngine (synchronous, offline) and AsyncLLM
(the server's), which tokenize, fan out n > 1, detokenize and find stop strings in the frontend
(input_processor, output_processor), while the EngineCore (scheduler + executor) runs behind a
core client, in a thread (core_client.py) or its own process (core_process.py), driven by one
CoreLoop (core_loop.py). Everything that crosses that boundary is in core_messages.py."""
