# A hardened Mac client: Nomad runs as root under launchd, tart runs as the "ci"
# user, jobs may only use the organisation's images, share folders below
# /Users/ci/shared and use NAT or softnet networking.

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
    tart_path             = "/opt/homebrew/bin/tart"
    tart_user             = "ci"
    # macOS 15.2+ guests start only in ci's login session: keep ci logged in at the
    # console (automatic login) and start tart run there (see the README).
    run_in_login_session  = true
    allowed_images        = ["ghcr.io/cirruslabs/macos-*", "registry.example.com/ci/*"]
    allowed_directories   = ["/Users/ci/shared"]
    allowed_network_modes = ["shared", "softnet"]
    max_macos_vms         = 2
  }
}
