"""Leader layer: liveness, the plan -> propose -> dispatch loop; acts only while this node leads."""
