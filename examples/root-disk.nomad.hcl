# Root disk options: read-only, with explicit caching and sync modes.
job "tart-root-disk" {
  datacenters = ["dc1"]

  group "vms" {
    task "vm" {
      driver = "tart"

      config {
        url          = "ghcr.io/cirruslabs/macos-sequoia-base:latest"
        ssh_user     = "admin"
        ssh_password = "admin"
        disk_size    = 80

        root_disk {
          readonly     = true
          caching_mode = "automatic"
          sync_mode    = "full"
        }
      }

      resources {
        cores  = 4
        memory = 8192
      }
    }
  }
}
