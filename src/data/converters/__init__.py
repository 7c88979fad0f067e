"""Converters from public dataset layouts to the manifest format; run `python -m src.data.converters -h`."""
