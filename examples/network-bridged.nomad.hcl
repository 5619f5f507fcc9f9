# A VM bridged onto the host's en0 network.
job "tart-bridged" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        network {
          mode              = "bridged"
          bridged_interface = "en0"
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
