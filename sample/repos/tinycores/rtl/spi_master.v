// tc_spi_master: SPI master, mode 0 (CPOL = 0, CPHA = 0), MSB first.
// A start pulse loads tx_byte, pulls cs_n low and generates eight sclk
// periods of 2*CLK_DIV system clocks each. mosi changes on the falling edge
// of sclk and miso is sampled on the rising edge. When the eighth bit has
// been sampled, rx_byte holds the received byte, done pulses for one cycle
// and cs_n returns high.
module tc_spi_master #(
    parameter CLK_DIV = 4
) (
    input            clk,
    input            rst,
    input            start,
    input      [7:0] tx_byte,
    output reg [7:0] rx_byte,
    output reg       done,
    output reg       sclk,
    output reg       cs_n,
    output           mosi,
    input            miso
);
    reg [7:0]  shifter;
    reg [3:0]  bits_left;
    reg [15:0] div_cnt;

    assign mosi = shifter[7];

    always @(posedge clk) begin
        done <= 1'b0;
        if (rst) begin
            sclk      <= 1'b0;
            cs_n      <= 1'b1;
            bits_left <= 0;
            div_cnt   <= 0;
            shifter   <= 8'h00;
            rx_byte   <= 8'h00;
        end else if (cs_n) begin
            if (start) begin
                shifter   <= tx_byte;
                bits_left <= 4'd8;
                cs_n      <= 1'b0;
                div_cnt   <= 0;
            end
        end else if (div_cnt == CLK_DIV - 1) begin
            div_cnt <= 0;
            sclk    <= ~sclk;
            if (!sclk) begin
                // rising edge: sample miso
                rx_byte   <= {rx_byte[6:0], miso};
                bits_left <= bits_left - 1'b1;
            end else begin
                // falling edge: next bit out, or end of the transfer
                shifter <= {shifter[6:0], 1'b0};
                if (bits_left == 0) begin
                    cs_n <= 1'b1;
                    done <= 1'b1;
                end
            end
        end else begin
            div_cnt <= div_cnt + 1'b1;
        end
    end
endmodule
