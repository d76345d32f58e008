"""Flashing a bundle's model image to a board (esptool, pyocd), by the profile's method."""
