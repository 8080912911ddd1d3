"""The contracts: what plugins implement and the core relies on, below everything else.

Hook specs, data types, the component base and its parameters, the registry and the plugin
manager, errors, seeds, the defense contract, and safe file writing. Imports nothing above it.
"""
