"""
The path of one call, whatever its transport: admission, the listener that
accepts it, the manager's policies, the registry of devices, and the call's
own record (its states and how it ended).
"""
