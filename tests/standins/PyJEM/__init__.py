"""A stand-in for JEOL's PyJEM package, for serving ``kind = "pyjem"`` configs in tests.

Put ``tests/standins`` and ``tests`` on ``PYTHONPATH``. ``TEM3.Stage3()`` returns one
shared stand-in stage (tests/pyjem_standin.py: setters return before the move starts);
``detector.Detector(name).snapshot_rawdata()`` renders the simulator's procedural
specimen at that stage's position as raw 16-bit pixels, so a whole acceptance run can
go through the PyJEM backend.
"""
