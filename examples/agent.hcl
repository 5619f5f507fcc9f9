# Nomad client agent configuration for a Mac that runs Tart VMs.
# Copy the nomad-driver-tart executable into plugin_dir first (see the README).

data_dir   = "/opt/nomad/data"
plugin_dir = "/opt/nomad/plugins"

client {
  enabled = true
  options = {
    "driver.allowlist" = "tart"
  }
}

plugin "nomad-driver-tart" {
  config {
    enabled = true
  }
}
