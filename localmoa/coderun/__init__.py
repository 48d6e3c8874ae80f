"""Running model-written code: contained (sandbox.py, sandbox_child.py), the code of a
reply (extract.py), and the examples of a prompt as calls and as tests (examples.py).

Used by `localmoa eval` (HumanEval's checker, votes over code) and by the ``verify``
and ``confidence`` selectors of ``aggregate: select`` (selection/). Nothing here runs
unless the user allowed model-written code to run (``--execute``, or ``execute: true``
in a profile's ``select``).
"""
