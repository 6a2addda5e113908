"""Comparisons: a grid of cells and seeds as jobs, and their statistics."""
