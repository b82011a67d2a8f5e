`include "svp_cfg.svh"

// apb_regs: APB register block with four 32-bit registers.
//   0x0 CTRL    read/write, resets to `SVP_CTRL_RESET; bit 0 enables the core
//   0x4 STATUS  read-only, shows the status input
//   0x8 DATA    read/write scratch/data register; a write pulses data_wr
//   0xC IRQ_EN  read/write interrupt enable mask
// The bus side is the slave half of apb_if, as plain ports.
// Transfers complete in the access phase with no wait states. An access to
// any other offset completes with pslverr set and reads as zero. irq is high
// when an enabled bit of status is set.
module apb_regs
  import apb_pkg::*;
(
  input  logic                   pclk,
  input  logic                   presetn,
  input  logic                   psel,
  input  logic                   penable,
  input  logic                   pwrite,
  input  logic [`SVP_ADDR_W-1:0] paddr,
  input  data_t                  pwdata,
  output data_t                  prdata,
  output logic                   pready,
  output logic                   pslverr,
  input  data_t status,
  output data_t ctrl,
  output data_t data,
  output logic  data_wr,
  output logic  irq
);
  data_t irq_en;
  logic  access;
  logic  [3:0] offset;

  assign access = psel && penable;
  assign offset = paddr[3:0];
  assign pready = 1'b1;
  assign pslverr = access && !is_register(offset);

  always_ff @(posedge pclk or negedge presetn) begin
    if (!presetn) begin
      ctrl    <= `SVP_CTRL_RESET;
      data    <= '0;
      irq_en  <= '0;
      data_wr <= 1'b0;
    end else begin
      data_wr <= 1'b0;
      if (access && pwrite) begin
        case (offset)
          REG_CTRL:   ctrl   <= pwdata;
          REG_DATA: begin
            data    <= pwdata;
            data_wr <= 1'b1;
          end
          REG_IRQ_EN: irq_en <= pwdata;
          default: ;
        endcase
      end
    end
  end

  always_comb begin
    case (offset)
      REG_CTRL:   prdata = ctrl;
      REG_STATUS: prdata = status;
      REG_DATA:   prdata = data;
      REG_IRQ_EN: prdata = irq_en;
      default:    prdata = '0;
    endcase
  end

  assign irq = |(status & irq_en);
endmodule
