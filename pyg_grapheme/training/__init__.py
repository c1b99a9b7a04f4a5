"""pyg_grapheme.training"""
