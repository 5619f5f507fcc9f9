# Every plugin option of nomad-driver-tart, with its default value.

plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-tart" {
  config {
    enabled            = true
    tart_path          = ""    # empty: tart on PATH, then /opt/homebrew/bin/tart
    tart_user          = ""    # as root: run tart as this user (needed for macOS 15+ guests)
    tart_home          = ""    # empty: tart's default, ~/.tart of the user running tart
    run_in_login_session = false # with tart_user: tart run in its login session (macOS 15.2+ guests)
    fingerprint_period = "30s"

    boot_timeout                  = "10m"
    image_pull_timeout            = "60m"
    image_pull_inactivity_timeout = "5m"

    # Operator controls. Empty lists allow any remote image and any absolute path.
    allowed_images        = []
    allowed_directories   = []
    allowed_network_modes = ["shared", "host", "bridged", "softnet"]
    max_macos_vms         = 2

    gc {
      enabled        = true
      period         = "5m"
      creation_grace = "10m"
      dry_run        = false
    }

    # Fleet: images kept present on the node, and the disk they may use.
    pre_pull {
      images      = []   # e.g. ["ghcr.io/cirruslabs/macos-sequoia-xcode:latest"]
      concurrency = 1
      period      = "1h"
      # auth { registry = "registry.example.com" username = "ci-bot" password = "..." }
    }
    # disk_reserve       = 20   # GB left free on TART_HOME's volume; unset: a tenth of it, at most 20
    # image_cache_budget = 300  # GB Tart's caches may use, pruned after pulls; unset: no budget
  }
}
