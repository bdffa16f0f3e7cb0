"""Unit conversions at the package's edges (inside: eV, Angstrom, eV/A, eV/A^3, fs, K)."""

#: eV per kcal/mol, to compare thresholds and errors with the paper's tables
EV_PER_KCAL_MOL = 0.0433641043
