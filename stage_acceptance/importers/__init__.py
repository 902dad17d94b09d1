"""Importers: sessions other tools recorded, written as recording-v1 folders."""
