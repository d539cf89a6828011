"""The language model and its corpus: token windows, model loading and family-neutral block views, perplexity."""
