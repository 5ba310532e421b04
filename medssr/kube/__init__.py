"""Everything medssr says to the Kubernetes API, in one package: the API client (``client``), the labels every
object carries (``labels``), the pieces of a pod it sets (``pods``: resources, env, volumes, placement, and a
pod's state), reading status conditions (``conditions``), and a module per custom kind with its group, version
and plural, its object builder and its state reader (``pytorchjob``, ``trainjob``, ``inferenceservice``).
The launchers, ``medssr deploy`` and ``medssr status`` all go through it."""
