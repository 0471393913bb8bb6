"""Built-in procedural class-conditional 3D data set: shape families, SDF sphere-tracing renderer, archive builder."""

from training.synthetic.shapes import (
    FAMILIES,
    FAMILY_NAMES,
    MAX_RADIUS,
    InstanceParams,
    occupancy,
    sample_instance,
    sample_surface,
    sdf,
)
from training.synthetic.raycast import Nuisance, parse_nuisance, render_batch, render_instance, sample_extras
from training.synthetic.build import GroundTruth, build_synthetic_dataset, load_ground_truth
