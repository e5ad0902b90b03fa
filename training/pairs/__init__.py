"""Difference texts for pairs of images: writers behind one interface, written as JSONL records."""
