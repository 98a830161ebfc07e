"""Data preparation: raw text to deduplicated, filtered, tokenized shards."""
