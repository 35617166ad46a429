"""Side-by-side benchmarks of ghl_async and what users would use instead (``make bench``)."""
