# Softnet isolation: the VM may only reach 192.168.0.0/24, and two ports are
# forwarded from the host's network. softnet_allow/softnet_expose imply
# mode = "softnet".
job "tart-softnet" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        network {
          softnet_allow  = ["192.168.0.0/24"]
          softnet_expose = ["2222:22", "8080:80"]
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
