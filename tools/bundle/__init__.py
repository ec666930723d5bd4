"""Bundle writer, stage graph builders, tokenizer builder and torch reference (see README.md)."""
