"""Installed as the package ``bwc_agent_data``: the files bwc-agent reads at run time.

This directory is the one copy of them.  The build maps it into the wheel
(setup.py), so an installed agent finds them with importlib.resources
(``agent.packaged``), never relative to a source tree or the working
directory.  ``bwc-agent config show`` lists them and prints one.
"""
