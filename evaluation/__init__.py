"""The replay benchmark: synthetic videos with ground truth (scenes), questions with exact answers (questions), the
JSONL dataset format with its writer and checking reader (dataset), and the scorer (scoring). docs/dataset.md
describes the format and the scoring rules."""
