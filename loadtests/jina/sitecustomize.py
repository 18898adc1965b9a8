"""Installs flowmesh's loopback-only network guard in every Python process that has this folder
on PYTHONPATH: the Jina Flow that `flowmesh-bench compare` starts, its gateway and every
executor process, however multiprocessing starts them (see flowmesh_netguard.py)."""

import flowmesh_netguard

flowmesh_netguard.install()
