# A host-only network (Tart's --net-host).
job "tart-host-network" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        network {
          mode = "host"
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
