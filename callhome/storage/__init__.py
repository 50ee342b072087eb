"""
What callhome keeps: result payloads as files (:mod:`callhome.storage.results`)
and their metadata, events and device state in the database
(:mod:`callhome.storage.store`).
"""
