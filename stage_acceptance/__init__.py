"""stage-acceptance: acceptance tests for electron-microscope stages.

Implements the target / reported / actual framework of Fiedler et al. (2023),
Evaluating Stage Motion for Automated Electron Microscopy, Microsc. Microanal. 29,
1931-1939: every stage move is compared as commanded, as reported and as measured by
registering overlapping images, and the instrument is certified into one of six
alignment cases (a-f).
"""

__version__ = "0.1.0"
