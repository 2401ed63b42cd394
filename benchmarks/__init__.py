"""Performance benchmarks: `.venv/bin/python -m benchmarks [--quick] [--only NAME …]`.

Dev-only, like `devkit/`: deployable code never imports this package and deploy packages
exclude it. See docs/performance.md for what is measured and the latest figures.
"""
