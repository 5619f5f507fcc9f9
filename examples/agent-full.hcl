# Every plugin option of nomad-driver-tart, with its default value.

plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-tart" {
  config {
    enabled            = true
    tart_path          = ""    # empty: tart on PATH, then /opt/homebrew/bin/tart
    tart_home          = ""    # empty: tart's default, ~/.tart of the user running tart
    fingerprint_period = "30s"
  }
}
