"""Load generation and load results: k6 runs, result files of other generators, LoadResult."""
