"""Generated visual question answering task for the embedded default model (tiny-llava-shapes)."""
