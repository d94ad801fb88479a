"""Evaluation: NLL bounds, generative perplexity under an external judge, entropy, MAUVE,
generative frontiers, the LOO sensitivity probe and Sudoku metrics (MATH.md section 6)."""
