# Warm the whole fleet on demand: one pull_only task on every Mac the tart driver runs
# on. Each makes the image present on its node (joining a pre-pull of it if one runs;
# force_pull also checks a cached tag against the registry) and exits 0. No VM starts.
#
#   nomad job run examples/warm-fleet.nomad.hcl
job "tart-warm-fleet" {
  datacenters = ["dc1"]
  type        = "sysbatch"

  group "warm" {
    task "pull" {
      driver = "tart"

      config {
        url        = "ghcr.io/cirruslabs/macos-sequoia-xcode:latest"
        pull_only  = true
        force_pull = true
      }

      # Reserved while the pull runs; nothing uses it (no VM starts).
      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
