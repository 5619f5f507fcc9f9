# The default NAT network, spelled out. A Linux guest, which does not count
# against Apple's limit of two macOS VMs per host. Linux has no macOS `log`
# command: the task's logs come from the systemd journal instead.
job "tart-linux-nat" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/ubuntu:latest"
        ssh_user     = "admin"
        ssh_password = "admin"

        network {
          mode = "shared"
        }

        log_command = ["sudo", "journalctl", "--follow", "--output", "short-iso"]
      }

      resources {
        cores  = 2
        memory = 4096
      }
    }
  }
}
