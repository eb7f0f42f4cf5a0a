"""The foblab command line.

The only package that combines firmware_sim and validator, and the only one that prints.
"""
