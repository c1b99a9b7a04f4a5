"""pyg_grapheme.nn"""
