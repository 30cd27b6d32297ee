"""Mining candidate concepts from Wikipedia, WorldKG and an LLM, through their real clients
and a content-addressed response cache."""
