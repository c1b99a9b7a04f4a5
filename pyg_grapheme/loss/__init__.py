"""pyg_grapheme.loss"""
