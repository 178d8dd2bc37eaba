"""island's OpenStack Cinder volume driver: ``island_cinder.driver.IslandDriver``.

Set ``volume_driver = island_cinder.driver.IslandDriver`` in a backend section of
cinder.conf, with this directory (cinder/ of the island repository) on cinder-volume's
Python path. docs/cinder.md describes the settings.
"""
