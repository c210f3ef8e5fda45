"""actserve's HTTP layer and command line; talks to the engine only through `AsyncLLM` and `LLM`."""
