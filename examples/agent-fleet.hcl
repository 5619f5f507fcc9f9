# A Mac of a CI fleet: the images the jobs use are pulled before any job needs them and
# follow their registry's tags; the cache stays within 300 GB and 40 GB stay free.
# Keep this file readable by root only (chmod 600): it holds a registry token.

plugin_dir = "/opt/nomad/plugins"

plugin "nomad-driver-tart" {
  config {
    tart_user = "ci"

    pre_pull {
      images = [
        "ghcr.io/cirruslabs/macos-sequoia-xcode:latest",
        "registry.example.com/ci/macos-xcode:16",
      ]
      concurrency = 1
      period      = "1h"

      auth {
        registry = "registry.example.com"
        username = "ci-bot"
        password = "registry-token"
      }
    }

    disk_reserve       = 40
    image_cache_budget = 300
  }
}
